package app

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/api"
)

// watchTokens reloads the tokens file on SIGHUP and whenever the file
// changes, without a restart: a token removed from the file is refused
// from the reload on. The folder is watched, not the file, so that a file
// replaced by a rename (as editors and secret mounts do) is seen too. A
// file that does not parse leaves the tokens in force as they were, with
// an error logged and counted, so that a typo never opens or locks the
// API.
func watchTokens(ctx context.Context, path string, tokens *api.Tokens, reg prometheus.Registerer, log *zap.Logger) error {
	reloads := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "cardmeter_tokens_reloads_total",
		Help: "Reloads of the tokens file, by result (ok, failed: the tokens in force are kept)."}, []string{"result"})
	reg.MustRegister(reloads, prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "cardmeter_tokens",
		Help: "Bearer tokens in force."}, func() float64 { return float64(tokens.Len()) }))
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		w.Close()
		return err
	}
	if err := w.Add(filepath.Dir(abs)); err != nil {
		w.Close()
		return err
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := func(why string) {
		next, err := api.LoadTokens(abs)
		if err != nil {
			reloads.WithLabelValues("failed").Inc()
			log.Error("tokens not reloaded: the tokens in force are kept", zap.String("cause", why), zap.Error(err))
			return
		}
		tokens.Replace(next)
		reloads.WithLabelValues("ok").Inc()
		log.Info("tokens reloaded", zap.String("cause", why), zap.Int("tokens", tokens.Len()))
	}
	go func() {
		defer w.Close()
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload("SIGHUP")
			case ev, ok := <-w.Events:
				if !ok {
					return
				}
				if ev.Name == abs && ev.Op&(fsnotify.Write|fsnotify.Create|fsnotify.Rename) != 0 {
					reload("file changed")
				}
			case err, ok := <-w.Errors:
				if !ok {
					return
				}
				log.Warn("watching the tokens file", zap.Error(err))
			}
		}
	}()
	return nil
}
