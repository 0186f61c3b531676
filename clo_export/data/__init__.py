"""Input data: the one preprocessing path shared by inference, calibration and comparison."""
