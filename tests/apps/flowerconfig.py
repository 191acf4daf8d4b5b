"""Flower's configuration file for the Flower tests (``--conf=tests/apps/flowerconfig.py``).

What a user's ``flowerconfig.py`` needs to show checkpoints in Flower.
"""

import celery_checkpoint.flower

celery_checkpoint.flower.install()
