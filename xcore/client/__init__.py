"""The client side of xcore: the owner's keys, file manifests and the bucket index."""
