// Command server is HelloService in Go: the same contract as `hello-sidecar server`, so it can sit behind the
// sidecar as a backend (the other direction of the interop).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	hellov1 "example.com/hello/gen/hello/v1"
)

type server struct {
	hellov1.UnimplementedHelloServiceServer
	pod string
}

func (s *server) SayHello(ctx context.Context, req *hellov1.HelloRequest) (*hellov1.HelloResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("x-hello-pod", s.pod))
	// x-hello-delay: 250ms delays this call, as the sidecar's own test fixture does.
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md.Get("x-hello-delay")) > 0 {
		if d, err := time.ParseDuration(md.Get("x-hello-delay")[0]); err == nil {
			select {
			case <-time.After(d):
			case <-ctx.Done():
				return nil, status.FromContextError(ctx.Err()).Err()
			}
		}
	}
	if req.GetName() == "" {
		return nil, status.Error(codes.InvalidArgument, "name is required")
	}
	return &hellov1.HelloResponse{Message: fmt.Sprintf("Hello, %s!", req.GetName()), Code: 200}, nil
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve on")
	pod := flag.String("id", "go-server", "name reported in x-hello-pod")
	// grpc-go's default ping policy (MinTime 5m, no pings without streams) unless shortened here, for tests.
	minPing := flag.Duration("keepalive-min-time", 0, "shortest PING interval the server tolerates (0: grpc-go's default, 5m)")
	flag.Parse()
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "listen:", err)
		os.Exit(2)
	}
	var opts []grpc.ServerOption
	if *minPing > 0 {
		opts = append(opts, grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: *minPing}))
	}
	s := grpc.NewServer(opts...)
	hellov1.RegisterHelloServiceServer(s, &server{pod: *pod})
	fmt.Println("serving on", lis.Addr())
	if err := s.Serve(lis); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}
