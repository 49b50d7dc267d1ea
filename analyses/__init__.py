"""Generic analyses over (model, inputs, metric), and the packaged studies built from them."""
