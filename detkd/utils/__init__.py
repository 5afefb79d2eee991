"""Small helpers every command shares: argument checks, the torch device and threads, files, reproducible
randomness and the environment recorded beside results. They import nothing of detkd's but its errors and version."""
