"""Stage two, classification: classifiers trained, evaluated and ranked on the HDF5 features file (DVC stages train, evaluate, leaderboard)."""
