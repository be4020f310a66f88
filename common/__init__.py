"""Pieces that more than one InferenceServer service needs: settings, queue messages, zip handling."""
