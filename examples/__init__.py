"""Runnable examples of Stepline apps."""
