"""Running trials: the queue, the worker loop, its heartbeats, and pools of workers on one machine."""
