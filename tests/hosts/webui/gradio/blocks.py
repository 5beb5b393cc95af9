"""Test double: gradio.blocks exists as a module in gradio 3 (nothing in it is used here)."""
