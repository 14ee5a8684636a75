"""NTU RGB+D data: parsing, preprocessing, the compact store and batches."""
