"""The training stage's input error, torch-free (``ghanet summarize`` raises it too)."""


class TrainInputError(ValueError):
    """The genomics or feature inputs cannot be used for training (the message says why)."""
