"""The test kit: fakes of the ports, the local broker, the exchange simulator, the service process,
topic readers and recorded data, shared by the tests, the benchmark and the demo."""
