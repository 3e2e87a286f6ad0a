"""The welcome-email flow: `app.py` is the app, `demo.py` is what `make dev` runs."""
