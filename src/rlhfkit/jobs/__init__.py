"""Commands that train nothing: `label` and `eval` (sampling jobs on the rollout engine) and `demo`."""
