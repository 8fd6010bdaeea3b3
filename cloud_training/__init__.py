"""Cloud training: per-device models on Spark, tracked in MLflow, exported as an edge bundle."""
