"""Where studies live: the storage URL, the database, its locks and every key hpo stores."""
