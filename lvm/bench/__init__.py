"""`lvm bench`: each benchmark runs this project and its reference path side by side in one process."""
