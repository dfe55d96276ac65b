"""`lvm eval`: perplexity of target images and the in-context task suite."""
