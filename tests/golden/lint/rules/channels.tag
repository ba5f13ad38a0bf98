group "渠道" {
	tag "线下-华南-广州" when city == "广州"
	tag "沉睡唤醒 " when days_since(last_active_at) >= 60
}
tag "星标组" manual
tag "疾病关注" when exists(events where key == "disease")
tag "新\u200b人" when count(orders) == 0
