"""Training one configuration: data, models, augmentation, the training loop and the trial objective."""
