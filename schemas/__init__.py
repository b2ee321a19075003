"""Marshmallow schemas: the one place that says what valid input is."""
