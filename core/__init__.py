"""The floor every other part stands on: the settings object, record types and the interchange format,
datasets read from it, and the torch-free helpers training and serving share. Imports nothing internal."""
