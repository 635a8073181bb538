"""PrepareFeedback on Apache Spark (prepare_engine=spark)."""
