"""What every command shares: the run loop (checkpoints, resume, signal stops, the non-finite guard, metrics,
progress), output folders and the process set-up."""
