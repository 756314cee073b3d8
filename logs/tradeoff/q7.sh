# mine.template "a photo of a {c}" with 6 tokens on the strong miner with 3 candidates; $1 = seed, $2 = out dir
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1
cd /work/main && .venv/bin/python tools/dm2_tradeoff.py logs/tradeoff/$2 --all erase.cpu_threads=1 attacks.restarts=1 --seeds $1 \
  --setting strongmine_cand3_tau0.2_template6 erase.max_loops=12 circumvent.replay=epoch mine.epochs=200 mine.optimizer=adam mine.lr=0.02 \
  mine.lr_drop_epoch=150 mine.lr_after_drop=0.002 mine.candidates=3 'mine.template=a photo of a {c}' mine.tokens=6
