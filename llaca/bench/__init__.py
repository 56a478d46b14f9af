"""The continual benchmark: methods compared on task sequences, plots and the α statistics (`python -m llaca.bench`)."""
