module github.com/weir-proxy/weir/examples/go/rate-limit

go 1.24

require github.com/weir-proxy/weir/sdk/go v0.0.0

replace github.com/weir-proxy/weir/sdk/go => ../../../sdk/go
