// /v1/ws/tail
