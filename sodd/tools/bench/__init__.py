"""`sodd bench`: the daemon under concurrent load beside plain and PaddleX baselines, one run each."""
