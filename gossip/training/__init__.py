"""Local training, with no networking: data sets, partitions, models and the trainer."""
