"""The attacks erasure is measured against (the paper's Section 4, "Attacks"), one module
each, and the sweep that runs them at every budget and restart.

- `params`: their settings (light: checked before anything heavy loads);
- `common`: what attacks share (results, token sequences, the original model);
- `pez`: the PEZ-style discrete token search P4D and UnlearnDiff use;
- `cce`, `p4d`, `unlearndiff`, `ring_a_bell`: one attack each, its `run` entry point;
- `registry`: name -> attack, read by the sweep; `dm2.attacks.params.ATTACK_PARAMS` is its
  params side (a test checks they agree);
- `sweep`: the base model's shared inputs, the sweeps over budgets and restarts, ASR.
"""
