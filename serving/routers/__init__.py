"""The API's routes, one module per group; ``serving/app.py`` includes them in this order."""
