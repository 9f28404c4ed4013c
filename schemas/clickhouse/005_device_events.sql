-- Device binding (机卡绑定): the devices a card.imei_changed.v1 or a
-- card.rebound.v1 names, each the first 14 digits of an IMEI ('' for the
-- other events). A column is added only where it is missing, so a
-- migration cut short runs again.
ALTER TABLE card_events ADD COLUMN imei String DEFAULT '' AFTER pool_id;

ALTER TABLE card_events ADD COLUMN bound_imei String DEFAULT '' AFTER imei;

ALTER TABLE card_events ADD COLUMN previous_imei String DEFAULT '' AFTER bound_imei;
