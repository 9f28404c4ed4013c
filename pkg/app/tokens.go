package app

import (
	"context"
	"crypto/sha256"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/cardmeter/cardmeter/pkg/api"
)

// watchTokens reloads the tokens file on SIGHUP and whenever the file
// changes, without a restart: a token removed from the file is refused
// from the reload on. The folder is watched, not the file, and any event
// in it leads to a read once events settle (200 ms), so that a file
// replaced by a rename or a swapped symlink (as editors and secret mounts
// do) is seen too; a read that finds the same content changes nothing. A
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
	var last [32]byte
	if b, err := os.ReadFile(abs); err == nil {
		last = sha256.Sum256(b)
	}
	reload := func(why string, always bool) {
		b, err := os.ReadFile(abs)
		if err == nil && !always && sha256.Sum256(b) == last {
			return // an event in the folder that did not change the file
		}
		next, err := api.LoadTokens(abs)
		if err != nil {
			reloads.WithLabelValues("failed").Inc()
			log.Error("tokens not reloaded: the tokens in force are kept", zap.String("cause", why), zap.Error(err))
			return
		}
		last = sha256.Sum256(b)
		tokens.Replace(next)
		reloads.WithLabelValues("ok").Inc()
		log.Info("tokens reloaded", zap.String("cause", why), zap.Int("tokens", tokens.Len()))
	}
	// a file is read once its events settle, not while it is being
	// written: a half-written line could name another account
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	go func() {
		defer w.Close()
		defer signal.Stop(hup)
		defer settle.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload("SIGHUP", true)
			case _, ok := <-w.Events:
				if !ok {
					return
				}
				// any event in the folder: secret mounts swap a symlink
				// (..data), editors rename; the content decides
				settle.Reset(200 * time.Millisecond)
			case <-settle.C:
				reload("file changed", false)
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
