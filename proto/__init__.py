"""Protocol buffers of Tulle's own APIs and their generated modules (`make proto`)."""
