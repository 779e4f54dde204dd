"""The training pipeline: plain typed stage functions, their CLI, and the Airflow DAG that calls them."""
