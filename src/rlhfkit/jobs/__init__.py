"""Commands that train nothing: `label` and `eval` (sampling jobs on the rollout engine); and the demos,
`demo` and `demo-multiturn`, that run the training commands one after another."""
