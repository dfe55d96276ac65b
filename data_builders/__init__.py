"""data_builders: visual data -> visual sequences (lists of up to 16 images) -> webdataset shards."""
