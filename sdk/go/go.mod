module github.com/weir-proxy/weir/sdk/go

go 1.24
