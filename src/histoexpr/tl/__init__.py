"""Training and prediction (fit, predict, evaluate, embed, pretrain) arrive with the model issues."""

__all__: list[str] = []
