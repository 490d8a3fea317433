"""Evaluation: batched rollouts, the generalization suite, training diagnostics and run statistics.

Entry points (imported lazily from their modules so the trainer can import `rollout` cheaply):
- `suite.run_suite(agent, suite)`, `suite.evaluate_run(run_dir, suite)`: the generalization suite;
  `figures.plot_run`: its per-run figure.
- `agent.load_agent(run_dir)`: a trained agent from its run directory.
- `diagnostics.TrainingDiagnostics`: overfitting diagnostics at each training evaluation.
- `stats`: IQM, stratified-bootstrap CIs, probability of improvement; `compare.compare_run_dirs`.
- `selection.select_runs`: offline selection scores from the dataset alone (TD error, BC loss, Q(s0),
  FQE in `fqe.py`, LogME in `logme.py`); `ranking`: the recommendation, its expected regret and the
  agreement with true returns.
Command (sparse_offline_rl/evaluate.py): `python -m sparse_offline_rl.evaluate run_dir=... suite=generalization`,
`... compare DIR...` and `... select DIR...`.
"""
