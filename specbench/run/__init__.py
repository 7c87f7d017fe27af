"""Running a preset: the runner, studies, Ray shards, training, replay, progress and the run
header."""
