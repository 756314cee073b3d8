"""The research scripts' own logic (research/*.py, the studies that chose the defaults), on tiny inputs."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from dm2.core.io import load_tensors
from dm2.world.params import UnetParams, WorldParams
from dm2.world.render import BACKGROUNDS, COLOURS, TEXTURES
from dm2.world.splits import world_split
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    return load_script(ROOT / "research" / f"{name}.py")


class ChannelJudge:
    """Calls an image `circle` when the mean of one colour channel is above 0.5."""

    classes = {"shape": ("circle", "square")}

    def __init__(self, channel: int) -> None:
        self.channel = channel

    def probs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        p = (images[:, self.channel].mean(dim=(1, 2)) > 0.5).float() * 0.8 + 0.1
        return {"shape": torch.stack([p, 1 - p], dim=1)}


def test_keep_images_groups_attack_images_by_the_two_judges(tmp_path):
    tradeoff = _script("dm2_tradeoff")
    # red and green on: both judges; red only: the first; green only: the second; black: neither.
    colours = [(1, 1, 0), (1, 1, 0), (1, 0, 0), (0, 1, 0), (0, 1, 0), (0, 1, 0), (0, 0, 0)]
    images = torch.stack([torch.tensor(c, dtype=torch.float32)[:, None, None].expand(3, 8, 8) for c in colours])
    counts = tradeoff.keep_images(images, {"red": ChannelJudge(0), "green": ChannelJudge(1)}, "circle", tmp_path)
    assert counts == {"both": 2, "red only": 1, "green only": 3, "neither": 1}
    kept = load_tensors(tmp_path / "images.safetensors")
    assert torch.equal(kept["images"], images)
    assert kept["is_concept_red"].tolist() == [True, True, True, False, False, False, False]
    # One row per group, each as wide as the largest group (3 images of 8 px, scale 4).
    grid = Image.open(tmp_path / "agreement.png")
    assert grid.height == 4 * (4 * 8) + 3 * 4


def test_tradeoff_attack_inputs_prefer_attack_base_and_search_only_for_ring_a_bell(monkeypatch):
    """attack_base's inputs when their fingerprint matches; else made here, with
    Ring-A-Bell's (long) search only when that attack is asked for."""
    from dm2.core.config import ParamsError, load_params

    tradeoff = _script("dm2_tradeoff")
    calls = []
    monkeypatch.setattr(tradeoff, "read_prompts", lambda path: ["a circle"])
    monkeypatch.setattr(tradeoff, "searchable", lambda *args: None)
    monkeypatch.setattr(tradeoff, "prepare_attacks", lambda *args: calls.append("search") or "searched")
    monkeypatch.setattr(tradeoff, "base_inputs", lambda *args: calls.append("base") or "base side")
    embeddings = SimpleNamespace(num_embeddings=10)
    pipe = SimpleNamespace(tokenizer=None, text_encoder=SimpleNamespace(get_input_embeddings=lambda: embeddings))
    params = load_params(ROOT / "params.yaml")

    monkeypatch.setattr(tradeoff, "load_inputs", lambda path, key: "attack_base's")
    assert tradeoff.attack_inputs(pipe, None, params, ["ring_a_bell"]) == "attack_base's"
    assert calls == []

    def refused(path, key):
        raise ParamsError(f"{path}: made with other settings")

    monkeypatch.setattr(tradeoff, "load_inputs", refused)
    assert tradeoff.attack_inputs(pipe, None, params, ["cce", "ring_a_bell"]) == "searched"
    assert tradeoff.attack_inputs(pipe, None, params, ["cce", "p4d"]) == "base side"
    assert calls == ["search", "base"]


def test_tradeoff_over_seeds_gives_mean_and_worst_seed_per_setting_and_attack():
    tradeoff = _script("dm2_tradeoff")

    def run(ratio, acc, asr_world, asr_geom, loops=2):
        return {
            "eval": {"ratio": ratio, "other_shapes_accuracy": acc, "clip_score": 70.0, "fd": 4.0,
                     "second_judge": {"judge": "geometric", "ratio": ratio / 2, "other_shapes_accuracy": acc}},
            "asr": {"cce": {"budgets": [1, 2], "geometric": [10.0, asr_geom], "world": [50.0, asr_world]}},  # as read back: keys sorted
            "loops": [{}] * loops,
        }  # fmt: skip

    results = {"base": run(100.0, 98.0, 0, 0), "a/seed0": run(10.0, 97.0, 80.0, 40.0, 3), "a/seed1": run(30.0, 94.0, 100.0, 20.0, 1)}
    table = tradeoff.over_seeds(results)
    # loops (fewest), Ratio by each judge, accuracy drop by each, CLIP drop, FD rise: mean (worst seed)
    assert "| a | 2 | 2.0 (1.0) | 20.0 (30.0) | 10.0 (15.0) | 2.5 (4.0) | 2.5 (4.0) | 0.0 (0.0) | 0.0 (0.0) |" in table
    # the largest budget's ASR, mean (worst seed) per judge, then each seed's
    assert "| a | cce | 2 | 90.0 (100.0) | 30.0 (40.0) | seed0 80.0 / 40.0, seed1 100.0 / 20.0 |" in table


def _exp_run(name: str, seed: int, ratio: float, tau: float = 0.2, tokens: int = 32, metrics: bool = True) -> dict:
    params = {"erase": {"seed": seed, "lora_targets": ["to_v"]}, "verify": {"tau": tau}, "mine": {"tokens": tokens}}
    judged = {"other_shapes_accuracy": 96.0, "second_judge": {"other_shapes_accuracy": 98.0, "ratio": ratio / 2}}
    eval_json = {
        "base": {"clip_score": 70.0, "fd": 4.0, "other_shapes_accuracy": 97.0, "second_judge": {"other_shapes_accuracy": 98.0}},
        "erased": {"clip_score": 68.0, "fd": 5.0, "ratio": ratio, **judged},
    }
    erase_json = {"loops": 3, "circumvented": 2, "last_s": 0.1, "stopped_by": "verification"}
    files = {"metrics/eval.json": {"data": eval_json}, "metrics/erase.json": {"data": erase_json}} if metrics else {}
    return {"rev": f"{seed}{name}", "name": name, "data": {"params": {"params.yaml": {"data": params}}, "metrics": files}}


def test_exp_trends_groups_runs_by_the_one_setting_they_change():
    trends = _script("exp_trends")
    commit = _exp_run("main", 0, 10.0)
    commit["experiments"] = [
        {"revs": [_exp_run("def-s1", 1, 20.0)]},
        {"revs": [_exp_run("tau-s0", 0, 70.0, tau=0.4)]},
        {"revs": [_exp_run("tau-s1", 1, 50.0, tau=0.4)]},
        {"revs": [_exp_run("queued", 2, 0.0, tau=0.4, metrics=False)]},  # not finished: left out
        {"revs": [_exp_run("two", 2, 0.0, tau=0.4, tokens=8)]},  # two settings changed: in no ablation
    ]
    runs = trends.collect([{"rev": "workspace", "data": {}}, commit], scores=lambda rev: [0.5, 0.1])
    assert sorted(r["name"] for r in runs) == ["def-s1", "main", "tau-s0", "tau-s1", "two"]
    assert runs[0]["clip_drop"] == 2.0 and runs[0]["fd_rise"] == 25.0 and runs[0]["acc_drop"] == 1.0
    rows = trends.trend_rows(runs, {"verify.tau": 0.2, "mine.tokens": 32, "erase.lora_targets": ["to_v"]})
    by = {(r["ablation"], r["setting"]): r for r in rows}
    assert by[("tau (S3)", "0.4")]["seeds"] == ["0", "1"]
    assert by[("tau (S3)", "0.4")]["ratio"] == "60.0 (70.0)"  # mean (worst seed)
    # The defaults' runs stand in every ablation as its default setting.
    for ablation, setting in [("tau (S3)", "0.2"), ("tokens (S4)", "32"), ("LoRA on (S6)", "`to_v`")]:
        assert by[(ablation, f"{setting} (default)")]["ratio"] == "15.0 (20.0)"
    assert not any(r["setting"] == "8" for r in rows)
    commit["experiments"].append({"revs": [_exp_run("again", 1, 30.0, tau=0.4)]})
    with pytest.raises(SystemExit, match="more than one run of erase seed"):
        trends.trend_rows(trends.collect([commit], scores=lambda rev: [0.5, 0.1]), {"verify.tau": 0.2, "mine.tokens": 32, "erase.lora_targets": ["to_v"]})
    # an older commit (`-n 2`) gives its experiments, not its own run a second time
    older = _exp_run("older", 0, 10.0) | {"experiments": [{"revs": [_exp_run("old-s2", 2, 5.0)]}]}
    names = [r["name"] for r in trends.collect([commit, older], scores=lambda rev: [0.5, 0.1])]
    assert "old-s2" in names and "older" not in names and names.count("main") == 1


def test_exp_trends_fills_a_missing_tau_with_the_run_whose_loops_are_that_taus():
    trends = _script("exp_trends")
    defaults = {"verify.tau": 0.1, "mine.tokens": 32, "erase.lora_targets": ["to_v"]}
    commit = _exp_run("main", 0, 10.0, tau=0.1)  # s(c) 0.55, 0.56, -0.08: the same loops at any tau up to 0.55
    commit["experiments"] = [
        {"revs": [_exp_run("d-s1", 1, 6.0, tau=0.1)]},  # 0.69, 0.74, 0.23, 0.35, 0.05
        {"revs": [_exp_run("t3-s1", 1, 15.0, tau=0.3)]},  # 0.69, 0.74, 0.23: stops at 0.23
        {"revs": [_exp_run("t2-s0", 0, 99.0, tau=0.2)]},  # a run of its own is kept, never replaced
    ]
    scores = {"0main": [0.55, 0.56, -0.08], "1d-s1": [0.69, 0.74, 0.23, 0.35, 0.05], "1t3-s1": [0.69, 0.74, 0.23], "0t2-s0": [0.55, 0.56, -0.08]}
    runs = trends.with_stand_ins(trends.collect([commit], scores=scores.__getitem__), defaults)
    stand_ins = {(r["erase.seed"], r["verify.tau"]): r["same_as"] for r in runs if r["same_as"]}
    # seed 0 at 0.3: main; seed 1 at 0.2: d-s1 (0.23 and 0.35 are over 0.2, 0.05 under);
    # seed 1 at 0.1 and 0.2 are not t3-s1 (it stopped at 0.23, over both)
    assert stand_ins == {(0, 0.3): "main", (1, 0.2): "d-s1"}
    rows = {(r["ablation"], r["setting"]): r for r in trends.trend_rows(runs, defaults)}
    assert rows[("tau (S3)", "0.3")]["seeds"] == ["0*", "1"] and rows[("tau (S3)", "0.3")]["ratio"] == "12.5 (15.0)"
    assert rows[("tau (S3)", "0.2")]["seeds"] == ["0", "1*"] and rows[("tau (S3)", "0.2")]["ratio"] == "52.5 (99.0)"
    # a stop by max_loops is the same run at every tau under all of its scores
    capped = {"scores": [0.5, 0.4], "stopped_by": "max_loops"}
    assert trends.same_loops(capped, 0.3) and not trends.same_loops(capped, 0.45)


def test_cce_routes_census_counts_every_image_in_the_concepts_head(tiny_pipe):
    routes = _script("cce_routes")
    judges = {"red": ChannelJudge(0), "green": ChannelJudge(1)}
    counts = routes.empty_prompt_census(tiny_pipe, judges, "circle", n=6, steps=2)
    images = routes.generate(tiny_pipe, routes.encode_prompts(tiny_pipe, [""]).expand(6, -1, -1), 123, 2, 1.0)
    for name, judge in judges.items():
        circles = int((judge.probs(images)["shape"].argmax(-1) == 0).sum())
        assert counts[name] == {"circle": circles, "square": 6 - circles}


def test_cce_routes_unconditional_losses_add_the_empty_prompts_terms():
    """With the empty prompt's states equal to c's, its pull to the anchor equals c's, so l_c
    doubles; l_p is 0 while the adapters are the identity, and above it once they move."""
    from dm2.erasure.dark_miner_steps import circumvent_losses, circumvent_states
    from dm2.erasure.lora import add_lora
    from dm2.models.world_sd import world_scheduler
    from tests.conftest import TINY_WIDTH, tiny_unet

    routes = _script("cce_routes")
    unet = tiny_unet()
    params = add_lora(unet, rank=4, seed=0)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    states = circumvent_states(torch.randn(1, 6, TINY_WIDTH, generator=g), torch.randn(1, 6, TINY_WIDTH, generator=g), lambda e: e)
    keep = (torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 6, TINY_WIDTH, generator=g))
    with torch.no_grad():
        stock_c, _ = circumvent_losses(unet, world_scheduler(), x0, states, torch.Generator().manual_seed(5), keep)
        for null_on_keep in (False, True):
            l_c, l_p = routes.unconditional_losses(unet, world_scheduler(), x0, states, torch.Generator().manual_seed(5), keep, states[0:1], null_on_keep)
            torch.testing.assert_close(l_c, 2 * stock_c)
            assert l_p == 0
        for q in params:
            q.normal_(0, 0.1)
        moved = [routes.unconditional_losses(unet, world_scheduler(), x0, states, torch.Generator().manual_seed(5), keep, states[0:1], n)[1] for n in (False, True)]
    assert min(moved) > 0 and moved[0] != moved[1]
    with pytest.raises(ValueError, match="circumvent.preserve"):
        routes.unconditional_losses(unet, world_scheduler(), x0, states, g, None, states[0:1])


def test_cce_routes_deep_lora_adapts_feed_forward_and_resnets(monkeypatch):
    import dm2.erasure.dark_miner
    from tests.conftest import tiny_unet

    routes = _script("cce_routes")
    monkeypatch.setattr(dm2.erasure.dark_miner, "add_lora", dm2.erasure.dark_miner.add_lora)  # restored after the test
    routes.apply_variant("deep_lora")
    unet = tiny_unet()
    dm2.erasure.dark_miner.add_lora(unet, 4, ("to_v",), seed=0)
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if "lora_A" in n}
    assert any(".ff.net.2" in n for n in adapted) and any("resnets.0.conv1" in n for n in adapted)
    assert any("attn2.to_v" in n for n in adapted) and not any("to_k" in n or "to_q" in n for n in adapted)
    with pytest.raises(SystemExit, match="not one of"):
        routes.apply_variant("wider")


def test_cce_routes_cross_attention_v_adapts_cross_attention_values_only(monkeypatch):
    import dm2.erasure.dark_miner
    from tests.conftest import tiny_unet

    routes = _script("cce_routes")
    monkeypatch.setattr(dm2.erasure.dark_miner, "add_lora", dm2.erasure.dark_miner.add_lora)
    routes.apply_variant("cross_attention_v")
    unet = tiny_unet()
    dm2.erasure.dark_miner.add_lora(unet, 4, ("to_v",), seed=0)
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in unet.named_parameters() if "lora_A" in n}
    assert adapted and all(n.endswith("attn2.to_v") for n in adapted)


def test_cce_routes_synonym_init_starts_each_candidate_from_a_synonym(monkeypatch, tiny_pipe, tiny_clip):
    import dm2.erasure.dark_miner
    from dm2.erasure.params import PoolParams
    from dm2.models.diffusion import prompt_token_embeddings
    from stages.pool import make_pool
    from tests.test_erase import settings

    routes = _script("cce_routes")
    starts = []

    def recording_mine(unet, scheduler, latents, init, *args):
        starts.append(init.clone())
        return init.clone(), [0.0]

    monkeypatch.setattr(dm2.erasure.dark_miner, "mine", recording_mine)
    monkeypatch.setattr(dm2.erasure.dark_miner.DarkMiner, "__init__", dm2.erasure.dark_miner.DarkMiner.__init__)
    routes.apply_variant("synonym_init")
    s = settings(max_loops=1)
    s.mine.candidates = 4
    pool = make_pool(tiny_pipe, "a circle photo", PoolParams(size=4, steps=2, guidance=2.0, seed=0))
    dm2.erasure.dark_miner.DarkMiner(tiny_pipe, tiny_clip, pool[0], pool[1], s).run(dm2.erasure.dark_miner.EraseState("test"))
    expected = [prompt_token_embeddings(tiny_pipe, f"a {w} photo")[:, 1:5] for w in ("circle", "ball", "disk", "circle")]
    assert len(starts) == 4 and all(torch.equal(a, b) for a, b in zip(starts, expected))
    assert not torch.equal(starts[0], starts[1])


def test_retrained_drops_every_concept_image_and_trains_on_the_rest(tiny_pipe):
    retrained = _script("retrained")
    world = WorldParams(train_images=40, colours=list(COLOURS), backgrounds=list(BACKGROUNDS), textures=list(TEXTURES))
    circles = sum(s.shape == "circle" for s in world_split(world, "train")[1])
    unet_p = UnetParams(steps=2, batch_size=4, lr=1e-3, channels=[32, 32])
    pipe, info = retrained.retrain_without("circle", world, unet_p, tiny_pipe.vae)
    assert circles > 0 and info["removed"] == circles and info["images"] == 40 - circles
    assert pipe.vae is tiny_pipe.vae and not any(p.requires_grad for p in pipe.unet.parameters())
    _, control = retrained.retrain_without("circle", world, unet_p, tiny_pipe.vae, keep_concept=True)
    assert control["removed"] == 0 and control["images"] == 40
    with pytest.raises(SystemExit, match="concept.name"):
        retrained.retrain_without("hexagon", world, unet_p, tiny_pipe.vae)


def test_eval_spread_groups_erase_seeds_of_a_setting_and_keeps_its_worst():
    eval_spread = _script("eval_spread")
    base = {"0": {"clip_score": 70.0, "fd": 4.0}, "1": {"clip_score": 70.0, "fd": 4.0}}
    results = {
        "base": base,
        "ap3_seed0": {"0": {"clip_score": 69.0, "fd": 5.0}, "1": {"clip_score": 69.0, "fd": 4.4}},  # drops 1, 1; rises 25, 10 %
        "ap3_seed12": {"0": {"clip_score": 67.0, "fd": 4.0}, "1": {"clip_score": 68.0, "fd": 4.0}},  # drops 3, 2; rises 0, 0 %
        "uce": {"0": {"clip_score": 65.0, "fd": 6.0}},
    }
    settings = eval_spread.by_setting(eval_spread.spread(results))
    assert list(settings) == ["ap3", "uce"] and settings["ap3"]["erase_seeds"] == 2
    assert settings["ap3"]["clip_drop"] == pytest.approx({"mean": 1.75, "worst_seed": 2.5, "worst_draw": 3.0})
    assert settings["ap3"]["fd_rise"] == pytest.approx({"mean": 8.75, "worst_seed": 17.5, "worst_draw": 25.0})
    assert settings["uce"]["fd_rise"] == pytest.approx({"mean": 50.0, "worst_seed": 50.0, "worst_draw": 50.0})
    assert "| ap3 | 2 | 1.75, 2.50, 3.00 | +8.8, +17.5, +25.0 |" in eval_spread.settings_markdown(settings)


def test_eval_spread_takes_loras_on_the_base_and_whole_pipelines_and_checks_them_first(tmp_path):
    eval_spread = _script("eval_spread")
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    (tmp_path / "sd").mkdir()
    (tmp_path / "sd" / "model_index.json").write_text("{}")
    lora, sd = str(tmp_path / "lora"), str(tmp_path / "sd")
    models = eval_spread.models_to_measure("world/sd", [f"dm2={lora}"], [f"retrained={sd}"])
    assert models == {"base": ("world/sd", None), "dm2": ("world/sd", lora), "retrained": (sd, None)}
    with pytest.raises(SystemExit, match="--model r="):
        eval_spread.models_to_measure("world/sd", [], [f"r={lora}"])  # a LoRA folder is not a pipeline
    with pytest.raises(SystemExit, match="--lora base="):
        eval_spread.models_to_measure("world/sd", [f"base={lora}"], [])
    with pytest.raises(SystemExit, match="--model dm2="):
        eval_spread.models_to_measure("world/sd", [f"dm2={lora}"], [f"dm2={sd}"])


def test_retrained_p4d_original_predicts_with_the_shipped_unet_inside_the_block_only(tiny_pipe):
    retrained = _script("retrained")
    other = copy.deepcopy(tiny_pipe.unet)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), torch.tensor([10])
    states = torch.randn(1, 77, tiny_pipe.text_encoder.config.hidden_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        own, theirs = tiny_pipe.unet(x, t, states).sample, other(x, t, states).sample
        with retrained.computing_as(tiny_pipe.unet, other):
            inside = tiny_pipe.unet(x, t, states).sample
        after = tiny_pipe.unet(x, t, states).sample
    assert not torch.allclose(own, theirs) and torch.equal(inside, theirs) and torch.equal(after, own)


def test_tradeoff_map_sums_up_each_setting_over_its_seeds_and_skips_unattacked_ones():
    tradeoff_map = _script("tradeoff_map")

    def run(clip, acc, cce=None):
        second = {"judge": "geometric", "other_shapes_accuracy": acc - 1}
        r = {"eval": {"clip_score": clip, "other_shapes_accuracy": acc, "second_judge": second}, "asr": {}}
        if cce is not None:
            r["asr"]["cce"] = {"budgets": [1, 2], "world": [0.0, cce], "geometric": [0.0, cce / 2]}
        return r

    results = {"base": run(70.0, 98.0), "a/seed0": run(69.0, 97.0, 40.0), "a/seed1": run(67.0, 98.0, 80.0),
               "b/seed0": run(69.5, 98.0, 90.0), "b/seed1": run(69.5, 98.0), "protocol": "reduced"}  # fmt: skip
    points = tradeoff_map.setting_points(results, "r.json")
    # b's seed 1 ran no attack: b is left out rather than summed up over one seed
    assert [p["name"] for p in points] == ["a"]
    assert points[0]["clip_drop"] == [1.0, 3.0] and points[0]["asr"]["cce"] == {"world": [40.0, 80.0], "geometric": [20.0, 40.0]}
    assert points[0]["acc_drop"] == {"world": [1.0, 0.0], "geometric": [1.0, 0.0]}
    table = tradeoff_map.markdown(points, ["world", "geometric"])
    # mean (worst seed) of CLIP drop, each judge's accuracy drop and each judge's ASR; no UnlearnDiff ran
    assert "| a | r.json | 2 | 2.00 (3.00) | 0.5 (1.0) | 0.5 (1.0) | 60.0 (80.0) | 30.0 (40.0) | - | - |" in table
    # a file whose runs carry no second judge gives the world judge's accuracy only
    del results["a/seed1"]["eval"]["second_judge"]
    assert tradeoff_map.setting_points(results, "r.json")[0]["acc_drop"] == {"world": [1.0, 0.0]}


def test_eval_spread_pairs_each_erased_seed_with_the_bases():
    eval_spread = _script("eval_spread")
    results = {
        "base": {"0": {"clip_score": 70.0, "fd": 4.0}, "1": {"clip_score": 71.0, "fd": 5.0}},
        "lora": {"0": {"clip_score": 69.0, "fd": 5.0}, "1": {"clip_score": 68.0, "fd": 5.5}, "2": {"clip_score": 60.0, "fd": 9.0}},
    }
    summary = eval_spread.spread(results)
    assert summary["base"]["fd"] == {"mean": 4.5, "min": 4.0, "max": 5.0} and "fd_rise" not in summary["base"]
    # seed 2 has no base to pair with: its figures count in the model's spread, not in its rise
    assert summary["lora"]["clip_drop"] == {"mean": 2.0, "min": 1.0, "max": 3.0}
    assert summary["lora"]["fd_rise"]["min"] == pytest.approx(10.0) and summary["lora"]["fd_rise"]["max"] == pytest.approx(25.0)
    assert summary["lora"]["clip_score"]["min"] == 60.0 and summary["lora"]["seeds"] == ["0", "1", "2"]
    assert "| lora | 0, 1, 2 | 65.67 (60.00-69.00) | 6.50 (5.00-9.00) | 1.00, 3.00 | +25.0, +10.0 |" in eval_spread.markdown(summary, results)


def test_research_scripts_name_their_own_places_and_the_index_names_each():
    """Every `python X.py` in a script's docstring and every results path in it exists
    (the scripts moved once, from tools/ and reports/dm2_settings/), and research/README.md
    names every script."""
    import ast
    import re

    scripts = sorted((ROOT / "research").glob("*.py"))
    index = (ROOT / "research" / "README.md").read_text()
    assert scripts
    for path in scripts:
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for named in re.findall(r"python (\S+\.py)", doc) + re.findall(r"\bresearch/\S+?\.(?:py|md|json)\b", doc):
            assert (ROOT / named).is_file(), f"{path.name}: {named} does not exist"
        assert "tools/" not in doc and "reports/dm2_settings" not in doc, path.name
        assert f"research/{path.name}" in index, f"research/README.md does not name {path.name}"
