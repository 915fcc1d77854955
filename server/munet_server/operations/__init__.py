"""Long-running operations (AddTask): queue, worker, progress, cancel, wait, resume."""
