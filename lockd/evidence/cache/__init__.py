"""What lockd keeps between runs, and the guards that decide when a kept result may be reused."""
