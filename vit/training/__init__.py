"""Training: the loop (`trainer.train`), the data, optimizer and schedule, checkpoints,
random streams, torchrun support and the run's logs."""
