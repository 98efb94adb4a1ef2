"""Explaining and applying trained models: class probabilities, Grad-CAM and attention saliency maps."""
