"""imaginet_train: SelfCon and cross-entropy training, classifier heads and evaluation for ImagiNet."""
