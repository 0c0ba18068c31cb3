"""timetuning: self-supervised time-tuning of dense image representations on unlabeled video."""

__version__ = "0.1.0"
