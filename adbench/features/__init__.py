"""Features: the frozen timm backbone, the feature cache, patch features (aggregation, reduction), nearest-neighbour search, the greedy coreset and patch-score → anomaly-map upsampling."""
