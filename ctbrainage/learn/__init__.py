"""Networks and training: the model factory, datasets, fitting one fold with Lightning, and
step 08's maturity U-Net.
"""
