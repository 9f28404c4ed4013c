package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"

	"github.com/cardmeter/cardmeter/pkg/broker"
	"github.com/cardmeter/cardmeter/pkg/sim"
)

// postSimulation files a what-if simulation (POST /v1/simulations) and
// asks a simulator (the projector role, which may read the log) to run
// it: 202 with the job, whose progress and result GET
// /v1/simulations/{id} answers.
func (s *Server) postSimulation(w http.ResponseWriter, r *http.Request) error {
	var req sim.Request
	if err := decodeBody(r, &req); err != nil {
		return err
	}
	if _, err := sim.New(req); err != nil {
		// "invalid simulation: <field>: <reason>"
		field, reason, _ := strings.Cut(strings.TrimPrefix(err.Error(), sim.ErrInvalid.Error()+": "), ": ")
		return invalid(field, reason)
	}
	if !principal(r).May(ScopeRead, req.AccountID) {
		return problem(http.StatusNotFound, "not-found/account", "no such account", req.AccountID)
	}
	for _, iccid := range req.Cards {
		if c, found := s.dir.Card(iccid); !found || c.AccountID != req.AccountID {
			return invalid("cards", iccid+" is not a card of account "+req.AccountID)
		}
	}
	if id := req.Plan.PlanID; id != "" {
		if _, found := s.dir.Plan(id); !found {
			return invalid("plan.plan_id", "no plan "+id)
		}
	}
	kv, err := s.js.KeyValue(r.Context(), broker.BucketSimulations)
	if err != nil {
		return retryLater("the simulations bucket", err)
	}
	job := sim.Job{ID: "sim-" + nuid.Next(), Status: sim.StatusQueued, Request: req, Created: time.Now().UTC().Format(time.RFC3339)}
	b, _ := json.Marshal(job)
	if _, err := kv.Create(r.Context(), job.ID, b); err != nil {
		return retryLater("filing the simulation", err)
	}
	reply, err := s.nc.RequestWithContext(r.Context(), broker.SimulateSubject, b)
	if err != nil {
		_ = kv.Delete(context.Background(), job.ID) // never taken: not to be found queued
		if errors.Is(err, nats.ErrNoResponders) {
			return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/simulator", "no simulator",
				"no projector is running to simulate (the projector role runs simulations)")}
		}
		return retryLater("asking a simulator", err)
	}
	var ack struct {
		Accepted bool   `json:"accepted"`
		Error    string `json:"error"`
	}
	if err := json.Unmarshal(reply.Data, &ack); err != nil || !ack.Accepted {
		_ = kv.Delete(context.Background(), job.ID)
		return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/simulator", "simulator busy", ack.Error)}
	}
	w.Header().Set("Location", "/v1/simulations/"+job.ID)
	writeJSON(w, http.StatusAccepted, "application/json", job)
	return nil
}

// getSimulation answers a simulation's progress, then its result.
func (s *Server) getSimulation(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	kv, err := s.js.KeyValue(r.Context(), broker.BucketSimulations)
	if err != nil {
		return retryLater("the simulations bucket", err)
	}
	e, err := kv.Get(r.Context(), id)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return problem(http.StatusNotFound, "not-found/simulation", "no such simulation", id+" (kept a day)")
	}
	if err != nil {
		return retryLater("reading the simulation", err)
	}
	var job sim.Job
	if err := json.Unmarshal(e.Value(), &job); err != nil {
		return err
	}
	if !principal(r).May(ScopeRead, job.Request.AccountID) {
		return problem(http.StatusNotFound, "not-found/simulation", "no such simulation", id+" (kept a day)")
	}
	return ok(w, job)
}

// retryLater is a 503 for a transient failure of JetStream while doing
// what.
func retryLater(what string, err error) error {
	return &retryProblem{problem(http.StatusServiceUnavailable, "unavailable/jetstream", "unavailable", what+": "+err.Error()+"; retry later")}
}
