"""Datasets: training data uploaded in chunks of rows, stored as signed .npy parts, trained on by reference.

dataset_store.py owns the files (meta.json + parts in the signed ArtifactStore, holds while a job uses one),
upload.py checks chunks as they arrive and names a dataset by its content, samples.py reads samples
back in blocks from the memory-mapped parts (windows built on the fly for series), pipeline.py feeds
those blocks to tf.data, dataset_servicer.py and dataset_messages.py are the DatasetService's gRPC side.
"""
